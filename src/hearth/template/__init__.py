"""Templates as data: recipes, the builder that turns them into layers, OCI pulls, artifacts."""
