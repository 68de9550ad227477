from pullthrough.cli import main

raise SystemExit(main())
