package outbox

// FetchSQL is the reader's query, for tests that EXPLAIN it.
const FetchSQL = fetchSQL
