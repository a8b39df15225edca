"""`fintrl predict --engine ray`: batch scoring on Ray Data (`engine`) into resumable shards (`shards`)."""
