"""``python -m multimodal`` (and ``torchrun -m multimodal``) runs the CLI."""

from multimodal.cli import main

raise SystemExit(main())
