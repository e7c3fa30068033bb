from gpumon_agent.cli import main

raise SystemExit(main())
