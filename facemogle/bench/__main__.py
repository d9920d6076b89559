"""`python -m facemogle.bench`: see `facemogle.bench.run`."""

from facemogle.bench.run import main

raise SystemExit(main())
