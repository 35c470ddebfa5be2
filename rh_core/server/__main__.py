from rh_core.server.server import main

main()
