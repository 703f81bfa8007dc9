"""Moved to vqrl.modeling.vision (shared by trainers and evaluation). This name stays an alias of that very module
for code written before the move (monkeypatching either name patches both); new code imports vqrl.modeling.vision.
"""

import sys

from ..modeling import vision as _moved

sys.modules[__name__] = _moved
