# greet: one name, and the default.
check "Hello, world!" greet
check "Hello, Ada!" greet Ada
