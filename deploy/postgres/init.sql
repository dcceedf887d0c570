-- The saga participants keep their data in databases of their own. The PostgreSQL image runs
-- this file once, when it creates the cluster.
CREATE DATABASE inventory OWNER "order";
CREATE DATABASE payment OWNER "order";
