import sys
from pathlib import Path

# Tests import the shared builders in tests/helpers.py by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
