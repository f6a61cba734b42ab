from darkroom._entry import main

main()
