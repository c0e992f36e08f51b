-- Placeholder on the adopt branch only: versions 011-013 belong to
-- migrations other branches add at the same time. Drop this file when
-- merging; 014 follows them.
SELECT 1;
