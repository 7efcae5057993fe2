-- Node state lives in each control-plane instance's node tracker (control/nodes.py), read from
-- the node KV bucket; this mirror of it had no reader. Node events stay in job_events.
DROP TABLE nodes;
