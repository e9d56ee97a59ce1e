"""``python -m ganclient`` is ``gan-sample``."""

from ganclient.sample import main

raise SystemExit(main())
