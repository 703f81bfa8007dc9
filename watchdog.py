"""Top-level shim so the seed's users can keep typing `python watchdog.py -- bash finetune_RL.sh`.

All logic lives in vqrl.watchdog; this file must stay a two-liner.
"""

import sys

from vqrl.watchdog import main

if __name__ == "__main__":
    sys.exit(main())
