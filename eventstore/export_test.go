package eventstore

// Options only the tests and benchmarks use, for the external test package.
var (
	WithStreamCache = withStreamCache
	WithSQLiteSync  = withSQLiteSync
)
