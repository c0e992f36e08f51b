-- Reserved: another branch's migration 015 replaces this file (migrations
-- must be numbered without gaps; 016_scale landed first).
SELECT 1;
