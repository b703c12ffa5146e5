"""Patient ids from Kaggle file names, a patient-grouped, stratified validation split and
patient-grouped, stratified folds for cross-validation.

Several patients have more than one image (30 pairs are byte-identical), so an
image-by-image split leaks patients into validation and inflates its metrics.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumonia import CLASSES

# personN_bacteria_K / personN_virus_K: pneumonia patient N.
_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)
# IM-NNNN-KKKK and NORMAL2-IM-NNNN-KKKK: one normal patient per NNNN. Both prefixes map to
# the same id: if they are different patients we only group more than needed, never leak.
_NORMAL = re.compile(r"^(?:NORMAL2-)?IM-(\d+)", re.IGNORECASE)
# personN_bacteria_K / personN_virus_K: the kind of pneumonia
_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def patient_id(path: str | Path) -> str:
    """The patient a file belongs to; an unrecognised name is its own patient."""
    name = Path(path).name
    if m := _PERSON.match(name):
        return f"person{int(m.group(1))}"
    if m := _NORMAL.match(name):
        return f"normal{int(m.group(1))}"
    return f"file:{Path(path).stem}"


def pneumonia_subtype(path: str | Path) -> str | None:
    """`bacteria` or `virus` from a Kaggle name (`personN_bacteria_K.jpeg`), else None."""
    m = _SUBTYPE.search(Path(path).name)
    return m.group(1).lower() if m else None


def _patients_by_class(
    paths: Sequence[str], labels: Sequence[int]
) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """(image indices of each patient, the sorted patients of each class); a patient belongs to
    the class most of their images have."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_patient[patient_id(p)].append(i)
    by_class: dict[int, list[str]] = {int(c): [] for c in sorted(set(labels))}
    for pid in sorted(by_patient):
        idx = by_patient[pid]
        own = [labels[i] for i in idx]
        by_class[int(max(set(own), key=own.count))].append(pid)
    return by_patient, by_class


def grouped_split(
    paths: Sequence[str], labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into (train, val) so that no patient is on both sides.

    Stratified by class: for each class, whole patients (shuffled with `seed`) go to
    validation until it holds `val_fraction` (in (0, 1), checked by the DataModule) of
    that class's images.
    """
    by_patient, by_class = _patients_by_class(paths, labels)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for cls, patients in by_class.items():
        rng.shuffle(patients)
        target = val_fraction * sum(1 for lab in labels if lab == cls)
        taken = 0
        for pid in patients:
            if taken >= target:
                break
            val.extend(by_patient[pid])
            taken += len(by_patient[pid])
    val_idx = np.array(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(paths)), val_idx)
    return train_idx, val_idx


def grouped_folds(paths: Sequence[str], labels: Sequence[int], folds: int, seed: int) -> np.ndarray:
    """Each image's fold (0 .. folds - 1) for k-fold cross-validation: a patient's images all
    in one fold, each class spread evenly over the folds.

    For each class, its patients (shuffled with `seed`, then the largest first) go one by
    one to the fold holding the fewest images of that class so far (the first such fold in
    a shuffled order on ties). A `ValueError` when a class has fewer patients than `folds`
    (a fold would have no image of it) or `folds` < 2.
    """
    if folds < 2:
        raise ValueError(f"{folds} folds: cross-validation needs at least 2")
    by_patient, by_class = _patients_by_class(paths, labels)
    rng = np.random.default_rng(seed)
    fold_of = np.full(len(paths), -1, dtype=np.int64)
    for cls, patients in by_class.items():
        if len(patients) < folds:
            name = CLASSES[cls] if 0 <= cls < len(CLASSES) else str(cls)
            raise ValueError(
                f"{folds} folds, but class {name} has {len(patients)} patient(s): each fold needs one of each class"
            )
        rng.shuffle(patients)
        patients.sort(key=lambda pid: -len(by_patient[pid]))  # stable: the shuffled order among equals
        order = rng.permutation(folds)  # which fold wins a tie
        filled = np.zeros(folds, dtype=np.int64)
        for pid in patients:
            k = int(order[np.argmin(filled[order])])
            fold_of[by_patient[pid]] = k
            filled[k] += len(by_patient[pid])
    return fold_of
