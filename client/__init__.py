"""hubctl: the operator client for hubd."""
