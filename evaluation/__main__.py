"""`python -m evaluation`: see `evaluation/evaluate.py`."""
import sys

from evaluation.evaluate import main

sys.exit(main())
