from jlora.bench.cli import main

main()
