from xmodal_ft.claims.cli import main

main()
