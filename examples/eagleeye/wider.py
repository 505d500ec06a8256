"""WIDER FACE on disk: the annotation txt, the subset .mat files and a torch Dataset.

The layout this module reads and writes (the one the official archives unpack to)::

    root/
      WIDER_train/images/<event>/<name>.jpg
      WIDER_val/images/<event>/<name>.jpg
      wider_face_split/wider_face_train_bbx_gt.txt
      wider_face_split/wider_face_val_bbx_gt.txt
      wider_face_split/wider_{easy,medium,hard}_val.mat   (or eval_tools/ground_truth/)

Boxes on disk and in :class:`ImageRecord` are ``x1, y1, w, h`` in pixels (the WIDER
convention, ``x2 = x1 + w``); the Dataset hands out ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

SPLITS = ("train", "val")
SUBSETS = ("easy", "medium", "hard")
ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
INVALID = ATTRIBUTES.index("invalid")

_LAYOUT = """expected layout:
  <root>/WIDER_train/images/<event>/<name>.jpg
  <root>/WIDER_val/images/<event>/<name>.jpg
  <root>/wider_face_split/wider_face_train_bbx_gt.txt
  <root>/wider_face_split/wider_face_val_bbx_gt.txt
  <root>/wider_face_split/wider_{easy,medium,hard}_val.mat (or <root>/eval_tools/ground_truth/)
Download WIDER FACE from http://shuoyang1213.me/WIDERFACE/ and unpack all archives into
<root>, or create the embedded stand-in with examples.eagleeye.synthfaces.ensure(<root>)."""

# The .mat header normally carries a timestamp; a fixed one keeps written files
# byte-identical for identical content.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: slimprune examples.eagleeye.wider"


class WiderFormatError(ValueError):
    """A file or directory does not follow the WIDER FACE format or layout."""


class WiderFormatWarning(UserWarning):
    """Annotations were readable but some boxes had to be skipped."""


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One annotated image.

    ``face_ids`` and ``hw`` are additions to the basic record: ``face_ids`` holds the
    1-based position of each kept box in the image's annotation list (what the
    subset ``gt_list`` indices refer to; None means no box was skipped), ``hw`` the
    image's (height, width) when the reader looked at the file.
    """

    name: str
    path: Path
    boxes: np.ndarray
    attrs: np.ndarray
    face_ids: np.ndarray | None = None
    hw: tuple[int, int] | None = None

    @property
    def event(self) -> str:
        """The event directory, e.g. ``0--Parade``."""
        return self.name.split("/", 1)[0]

    @property
    def stem(self) -> str:
        """The file name without directory and extension, as the .mat files spell it."""
        return Path(self.name).stem

    def ids(self) -> np.ndarray:
        """1-based annotation position of each box (``face_ids`` or ``1..N``)."""
        if self.face_ids is not None:
            return self.face_ids
        return np.arange(1, len(self.boxes) + 1, dtype=np.int64)

    def valid(self) -> np.ndarray:
        """Boolean mask of the boxes not marked invalid."""
        return self.attrs[:, INVALID] == 0


# ---------------------------------------------------------------------------
# Annotation txt


def _parse_face_line(line: str, txt_path: Path, lineno: int) -> tuple[list[float], list[int]]:
    """Split one ``x1 y1 w h blur expression illumination invalid occlusion pose`` line."""
    fields = line.split()
    try:
        if len(fields) != 10:
            raise ValueError
        box = [float(f) for f in fields[:4]]
        attrs = [int(f) for f in fields[4:]]
    except ValueError:
        raise WiderFormatError(
            f"{txt_path}:{lineno}: expected a face line of 10 numbers "
            f"'x1 y1 w h {' '.join(ATTRIBUTES)}' (4 numbers, 6 integers), got {line.strip()!r}"
        ) from None
    return box, attrs


def _image_hw(path: Path, txt_path: Path, lineno: int, name: str) -> tuple[int, int]:
    """(height, width) from the image header; the error names the missing file."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise WiderFormatError(
            f"{txt_path}:{lineno}: image {name!r} is listed but {path} does not exist"
        ) from None
    except OSError as e:
        raise WiderFormatError(f"{txt_path}:{lineno}: cannot read image {path}: {e}") from None
    return h, w


def read_annotations(txt_path: Path, image_root: Path, check_images: bool = True,
                     skip_degenerate: bool = True) -> list[ImageRecord]:
    """Read a ``wider_face_*_bbx_gt.txt`` file.

    Args:
        txt_path: the annotation file.
        image_root: the directory the image names are relative to
            (``WIDER_<split>/images``).
        check_images: open each image header to check it exists and to drop boxes
            that lie entirely outside it (fast: pixels are not decoded).
        skip_degenerate: skip boxes of zero or negative size and boxes with no pixel
            inside the image. ``False`` keeps every box as written, as the official
            evaluation code does (its ``face_bbx_list`` holds them all as match
            candidates: under its +1 pixel convention a 0 x 0 box is one pixel, and a
            prediction on it can recall it): evaluation reads the ground truth so.

    Returns:
        One record per image, in file order. Skipped boxes (``face_ids`` keeps the
        original positions) are reported by a single :class:`WiderFormatWarning`.
        Boxes that stick partly out of the image are kept as written.

    Raises:
        WiderFormatError: a listed image is missing (names it), or a line is malformed
            (names the file and line number).

    Example:
        >>> records = read_annotations(root / "wider_face_split/wider_face_val_bbx_gt.txt",
        ...                            root / "WIDER_val/images")  # doctest: +SKIP
    """
    txt_path = Path(txt_path)
    image_root = Path(image_root)
    lines = txt_path.read_text().splitlines()
    records: list[ImageRecord] = []
    skipped: list[str] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        name_lineno = i + 1
        i += 1
        if not name:
            continue
        if i >= len(lines):
            raise WiderFormatError(f"{txt_path}:{i + 1}: file ends before the face count of {name!r}")
        count_text = lines[i].strip()
        try:
            count = int(count_text)
            if count < 0:
                raise ValueError
        except ValueError:
            raise WiderFormatError(
                f"{txt_path}:{i + 1}: expected the face count of {name!r} "
                f"(a non-negative integer), got {count_text!r}"
            ) from None
        i += 1
        path = image_root / name
        hw = _image_hw(path, txt_path, name_lineno, name) if check_images else None
        boxes: list[list[float]] = []
        attrs: list[list[int]] = []
        ids: list[int] = []
        if count == 0:
            # The official files follow an empty image with one line of ten zeros.
            if i < len(lines) and len(lines[i].split()) == 10:
                _parse_face_line(lines[i], txt_path, i + 1)
                i += 1
        for k in range(count):
            if i >= len(lines):
                raise WiderFormatError(
                    f"{txt_path}:{i + 1}: file ends after {k} of the {count} faces of {name!r}"
                )
            box, attr = _parse_face_line(lines[i], txt_path, i + 1)
            x1, y1, w, h = box
            outside = hw is not None and (x1 >= hw[1] or y1 >= hw[0] or x1 + w <= 0 or y1 + h <= 0)
            if skip_degenerate and (w <= 0 or h <= 0 or outside):
                why = "zero size" if w <= 0 or h <= 0 else f"outside the {hw[1]}x{hw[0]} image"
                skipped.append(f"{txt_path}:{i + 1} ({why})")
            else:
                boxes.append(box)
                attrs.append(attr)
                ids.append(k + 1)
            i += 1
        face_ids = np.asarray(ids, np.int64) if len(ids) != count else None
        records.append(
            ImageRecord(
                name=name,
                path=path.absolute(),
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                attrs=np.asarray(attrs, np.int32).reshape(-1, 6),
                face_ids=face_ids,
                hw=hw,
            )
        )
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        warnings.warn(
            f"skipped {len(skipped)} box{'es' if len(skipped) != 1 else ''} of zero size or outside "
            f"the image in {txt_path}: {shown}",
            WiderFormatWarning,
            stacklevel=2,
        )
    return records


def _number(v: float) -> str:
    """Integers as integers (the official files), anything else with 2 decimals."""
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


def write_annotations(records: Sequence[ImageRecord], txt_path: Path) -> None:
    """Write records in the ``wider_face_*_bbx_gt.txt`` format (read back by
    :func:`read_annotations`).

    An image without faces gets a count of 0 and one line of ten zeros, as in the
    official files. Skipped boxes are not written, so positions are renumbered.
    """
    out: list[str] = []
    for r in records:
        out.append(r.name)
        out.append(str(len(r.boxes)))
        if len(r.boxes) == 0:
            out.append(" ".join(["0"] * 10))
        for box, attr in zip(r.boxes, r.attrs):
            out.append(" ".join([_number(v) for v in box] + [str(int(a)) for a in attr]))
    txt_path = Path(txt_path)
    txt_path.parent.mkdir(parents=True, exist_ok=True)
    txt_path.write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------
# Subset .mat files


def _cell(items: Sequence[object]) -> np.ndarray:
    """A MATLAB column cell array (n x 1 object array)."""
    cell = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        cell[k, 0] = item
    return cell


def _savemat(path: Path, content: Mapping[str, object]) -> None:
    """scipy.io.savemat with a fixed header so equal content gives equal bytes."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, dict(content), format="5", oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _by_event(records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
    """Records grouped by event, events in order of first appearance."""
    groups: dict[str, list[ImageRecord]] = {}
    for r in records:
        groups.setdefault(r.event, []).append(r)
    return groups


def write_subsets(
    records: Sequence[ImageRecord],
    subsets: Mapping[str, Mapping[str, np.ndarray]],
    split_dir: Path,
) -> None:
    """Write ``wider_face_val.mat`` and ``wider_{subset}_val.mat`` like the official ones.

    Each file holds ``event_list`` (E x 1 cell of event names), ``file_list``
    (E x 1 cell of n x 1 cells of file names without extension) and ``face_bbx_list``
    (E x 1 cell of n x 1 cells of K x 4 ``x1 y1 w h`` arrays); the subset files add
    ``gt_list`` (1-based face indices, m x 1), ``wider_face_val.mat`` the six
    ``*_label_list`` attribute cells.

    Args:
        records: the val images; the written boxes are ``records[i].boxes``.
        subsets: ``{subset: {image name: 1-based face indices}}`` in the records'
            annotation numbering (``ImageRecord.ids()``); an image missing from a
            subset has no face in it. Indices of skipped boxes are dropped.
        split_dir: where the files go (created if needed).
    """
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_event(records)
    events = list(groups)
    common = {
        "event_list": _cell(events),
        "file_list": _cell([_cell([r.stem for r in groups[e]]) for e in events]),
        "face_bbx_list": _cell([_cell([r.boxes.astype(np.float64) for r in groups[e]]) for e in events]),
    }
    labels = {
        f"{attr}_label_list": _cell(
            [_cell([r.attrs[:, [k]].astype(np.float64) for r in groups[e]]) for e in events]
        )
        for k, attr in enumerate(ATTRIBUTES)
    }
    _savemat(split_dir / "wider_face_val.mat", {**common, **labels})
    for subset, members in subsets.items():
        gt = []
        for e in events:
            per_image = []
            for r in groups[e]:
                wanted = np.asarray(members.get(r.name, []), np.int64)
                positions = np.flatnonzero(np.isin(r.ids(), wanted)) + 1
                per_image.append(positions.astype(np.float64).reshape(-1, 1))
            gt.append(_cell(per_image))
        _savemat(split_dir / f"wider_{subset}_val.mat", {**common, "gt_list": _cell(gt)})


def _mat_string(x: np.ndarray) -> str:
    """A MATLAB char array as loadmat returns it, as a str."""
    return str(np.asarray(x).ravel()[0]) if np.asarray(x).size else ""


def read_subsets(split_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read ``wider_{easy,medium,hard}_val.mat`` from ``split_dir``.

    Returns:
        ``{"easy"|"medium"|"hard": {"<event>/<file>.jpg": 1-based face indices (int64)}}``,
        every image of the file present (possibly with no indices).

    Raises:
        WiderFormatError: a file is missing or lacks the ``event_list``/``file_list``/
            ``gt_list`` cells.
    """
    split_dir = Path(split_dir)
    result: dict[str, dict[str, np.ndarray]] = {}
    for subset in SUBSETS:
        path = split_dir / f"wider_{subset}_val.mat"
        if not path.is_file():
            raise WiderFormatError(f"missing subset file {path}; {_LAYOUT}")
        mat = scipy.io.loadmat(path)
        missing = [k for k in ("event_list", "file_list", "gt_list") if k not in mat]
        if missing:
            raise WiderFormatError(f"{path} has no {', '.join(missing)}: not a WIDER FACE subset file")
        members: dict[str, np.ndarray] = {}
        for e, event in enumerate(mat["event_list"].ravel()):
            event_name = _mat_string(event)
            files = mat["file_list"].ravel()[e].ravel()
            gts = mat["gt_list"].ravel()[e].ravel()
            if len(files) != len(gts):
                raise WiderFormatError(
                    f"{path}: event {event_name!r} lists {len(files)} files but {len(gts)} gt entries"
                )
            for f, g in zip(files, gts):
                name = f"{event_name}/{_mat_string(f)}.jpg"
                members[name] = np.asarray(g, dtype=np.float64).ravel().astype(np.int64)
        result[subset] = members
    return result


def subsets_dir(root: Path) -> Path:
    """The directory holding the subset .mat files of a WIDER root.

    Looks in ``wider_face_split/`` then ``eval_tools/ground_truth/`` (where the
    official evaluation archive puts them).
    """
    root = Path(root)
    for candidate in (root / "wider_face_split", root / "eval_tools" / "ground_truth"):
        if (candidate / "wider_hard_val.mat").is_file():
            return candidate
    raise WiderFormatError(f"no wider_hard_val.mat under {root}; {_LAYOUT}")


def load_subsets(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """:func:`read_subsets` from wherever the WIDER root keeps the .mat files."""
    return read_subsets(subsets_dir(root))


# ---------------------------------------------------------------------------
# Splits and the Dataset


def check_layout(root: Path, split: str) -> tuple[Path, Path]:
    """(annotation txt, image root) of a split, or a WiderFormatError naming what is missing."""
    if split not in SPLITS:
        raise ValueError(f"unknown WIDER FACE split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise WiderFormatError(f"data root {root} does not exist or is not a directory; {_LAYOUT}")
    txt = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    images = root / f"WIDER_{split}" / "images"
    for needed in (images, txt):
        if not needed.exists():
            raise WiderFormatError(f"{root} is not a WIDER FACE directory: missing {needed}; {_LAYOUT}")
    return txt, images


def load_split(root: Path, split: str, skip_degenerate: bool = True) -> list[ImageRecord]:
    """Read the annotations of one split (``"train"`` or ``"val"``) of a WIDER root
    (``skip_degenerate``: see :func:`read_annotations`; evaluation passes ``False``).

    Raises:
        WiderFormatError: ``root`` is not in the WIDER layout (the message names the
            missing file or directory and shows the expected layout), or see
            :func:`read_annotations`.

    Example:
        >>> records = load_split(Path("data/synthfaces"), "val")  # doctest: +SKIP
    """
    txt, images = check_layout(root, split)
    return read_annotations(txt, images, skip_degenerate=skip_degenerate)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``x1, y1, w, h`` -> ``x1, y1, x2, y2`` (columns beyond 4 are kept; float dtype kept)."""
    boxes = np.asarray(boxes)
    out = np.array(boxes, dtype=np.result_type(boxes.dtype, np.float32), copy=True)
    out[:, 2:4] += out[:, 0:2]
    return out


class WiderFaceDataset(torch.utils.data.Dataset):
    """Images and face boxes of one WIDER split.

    ``dataset[i]`` is ``(image, boxes, i)``: image float32 ``[3, H, W]`` in [0, 1],
    boxes float32 ``[N, 4]`` ``x1, y1, x2, y2`` in pixels of the returned image.
    Boxes are clipped to the image before ``transform(image_uint8_hwc, boxes)``
    runs; faces marked invalid are dropped when ``drop_invalid``. Use
    ``dataset.records[i]`` for the name and original ``hw`` of item ``i``.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        drop_invalid: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.drop_invalid = drop_invalid
        # Every box as written (what the official evaluation matches against); load()
        # drops the ones with no area after clipping from the training targets.
        self.records: list[ImageRecord] = load_split(self.root, split, skip_degenerate=False)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` before the transform: uint8 ``HxWx3`` RGB and ``x1y1x2y2`` boxes."""
        record = self.records[i]
        with Image.open(record.path) as im:
            image = np.asarray(im.convert("RGB"))
        boxes = record.boxes[record.valid()] if self.drop_invalid else record.boxes
        boxes = xywh_to_xyxy(boxes)
        h, w = image.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return image, boxes[keep]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, boxes = self.load(i)
        if self.transform is not None:
            image, boxes = self.transform(image, boxes)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        return tensor, torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)), i


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Stack same-size images; keep the per-image box tensors and indices as lists."""
    images, boxes, indices = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(
            f"cannot stack images of different sizes {sorted(shapes)}; give the dataset a "
            "transform that resizes (TrainAugment or EvalResize from examples.eagleeye.augment)"
        )
    return torch.stack(images), list(boxes), list(indices)
