"""Errors a user can fix; entry points print them as one line instead of a traceback."""


class UserError(ValueError):
    """Bad input: data, configuration or checkpoint."""


class ConfigError(UserError):
    """A configuration value that cannot work; the message names the key."""


class CheckpointError(UserError):
    """A file that is not a checkpoint of this project."""


def file_error(err: BaseException) -> str:
    """Why a file could not be read, in one line (for bad_images.tsv, predict's report and
    the app's rows). Our own errors already say it; decoder errors get a plainer wording."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if type(err).__name__ == "UnidentifiedImageError":  # PIL: no decoder recognised the bytes
        return "not an image (JPEG, PNG, BMP, TIFF, WebP) nor a DICOM file"
    if isinstance(err, UserError):
        return text[:300]
    if "truncated" in text.lower():
        return f"truncated or damaged image ({text})"[:300]
    return f"{type(err).__name__}: {text}"[:300]
