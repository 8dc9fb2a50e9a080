"""One file per architecture; importing this package registers every variant."""
