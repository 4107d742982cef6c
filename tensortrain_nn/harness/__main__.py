"""``python -m tensortrain_nn.harness``: lm-eval's command line with ``tensortrain`` registered."""

from tensortrain_nn.harness import main

raise SystemExit(main())
