import sys
from pathlib import Path

# Tests import the shared builders in tests/helpers.py by name, and the benchmarks package from
# the repository root (plain `pytest` does not put the root on sys.path; `python -m pytest` does).
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
