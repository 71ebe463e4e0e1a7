from lossfloor.app.cli import main

main()
