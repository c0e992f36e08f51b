// Package domain is the seed domain shared by the writer and the shipped
// projections: orders and products, their commands, events and upcasters.
// Nothing here talks to the database.
package domain
