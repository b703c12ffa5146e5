"""Everything about configs: resolvers, composing from code, instantiation, value checks."""
