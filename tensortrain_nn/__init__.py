"""tensortrain_nn: tensor-train layers and LoRETTA model surgery on PyTorch.

* :class:`TTLinear`: a drop-in ``nn.Linear`` whose weight is a TT-matrix.
* :class:`TTAdapter` (LoRETTA_adp): a bottleneck adapter with TT projections after a sublayer.
* :class:`TTReparam` (LoRETTA_rep): a frozen linear layer plus a TT low-rank update, mergeable.
"""

from tensortrain_nn.adapter import TTAdapter, TTBottleneck
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.reparam import TTReparam, TTUpdate

__all__ = ["TTAdapter", "TTBottleneck", "TTLinear", "TTReparam", "TTUpdate"]
