import os
import tempfile

# Keep caches and matplotlib config out of the user's home; nothing is downloaded.
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="invsolve-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")
