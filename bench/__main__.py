"""`python -m bench SECTION...` runs benchmark sections (`bench/run.py`); `python -m bench peers` compares with the
rate-coded converters (`bench/peers.py`)."""

import sys

if sys.argv[1:2] == ["peers"]:
    from bench.peers import main

    sys.exit(main(sys.argv[2:]))
else:
    from bench.run import main

    main(sys.argv[1:])
