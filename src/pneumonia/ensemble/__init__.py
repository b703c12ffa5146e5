"""Ensembles as a recipe: several trained checkpoints become one model.

    python -m pneumonia.tools.ensemble <run dirs, multirun dirs or .ckpt files> [--combine prob|logit]
    python train.py experiment=best_ensemble        # trains the members, then builds it

`build.py` assembles the members' networks into one `pneumonia.models.Ensemble`, writes an
ordinary checkpoint of this project (so eval.py, predict.py, Grad-CAM and export.py take it
as they take any) and chooses its own threshold on the validation split with the same
calibration code train.py runs after training. `train.py` (this package's) trains the
members of a recipe with different seeds, then builds. Members must share the validation
split (data root, val_fraction, split_seed, min_val_images, ...): otherwise one member's
training images would be in the split the ensemble's threshold is chosen on; and the
preprocessing (image size, channels, normalisation, test-time augmentation), which one
preset applies for all of them. `cv.py` trains the fold models of a k-fold cross-validation
(`cv.folds=K`) and can build them into one ensemble whose threshold is chosen on their
out-of-fold scores, the one case where members' validation splits differ.
"""

from pneumonia.ensemble.members import find_members

__all__ = ["find_members"]
