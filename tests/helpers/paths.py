"""Where things are, independent of the folder a test file sits in."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
SRC = ROOT / "src"
FIXTURES = ROOT / "tests" / "fixtures"
TINY_TOKENIZER = SRC / "tadastream" / "assets" / "tiny_tokenizer"
