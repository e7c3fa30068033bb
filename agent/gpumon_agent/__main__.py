from gpumon_agent.entry import main

raise SystemExit(main())
