from jlora.server.cli import main

main()
