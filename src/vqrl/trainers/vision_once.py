"""Moved to vqrl.modeling.vision_once (shared by trainers and evaluation). This name stays an alias of that very
module for code written before the move (monkeypatching either name patches both); new code imports
vqrl.modeling.vision_once.
"""

import sys

from ..modeling import vision_once as _moved

sys.modules[__name__] = _moved
