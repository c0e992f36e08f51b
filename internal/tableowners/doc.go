// Package tableowners holds a test, and nothing else, that keeps one
// writing package per table: it parses every non-test Go file of the
// module, finds the SQL in its string literals that changes a table
// (INSERT, UPDATE, DELETE, TRUNCATE, MERGE, COPY, and row locks taken with
// FOR UPDATE or FOR SHARE), and fails when a package other than the table's
// declared owner issues it. See owners in tableowners_test.go.
package tableowners
