"""`python -m vqrl.learning`: the learning check (see vqrl.learning.check)."""

from .check import main

main()
