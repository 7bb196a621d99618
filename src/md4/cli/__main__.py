from md4.cli import main

raise SystemExit(main())
