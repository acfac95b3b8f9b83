from flows.engine.lifecycle import main

main()
