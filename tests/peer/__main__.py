from tests.peer.cli import main

raise SystemExit(main())
