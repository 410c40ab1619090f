"""Lets the tests import polyfit_sin.py from the project root, however pytest is started."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
