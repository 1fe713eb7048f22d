from mec_client.cli import main

main()
