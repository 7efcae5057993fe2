"""Every wire type by name, with its decoder: the list the JSON Schema export and tests walk."""

from __future__ import annotations

from typing import Any

from schemas import api, workflows
from schemas.alerts import Alert
from schemas.chunked import ChunkedSpec
from schemas.codec import MAX_EVENT_BYTES, Decoder
from schemas.control_msgs import NodeCommand, NodeCommandReply
from schemas.events import Event
from schemas.jobend import JobEndQuery, JobEndReply
from schemas.jobs import JobSpec
from schemas.nodes import Heartbeat, NodeCapabilities, NodeRecord

#: name -> type; the name is the JSON Schema file name under schemas/json/.
WIRE_TYPES: dict[str, Any] = {
    "job": JobSpec,
    "event": Event,
    "node_capabilities": NodeCapabilities,
    "heartbeat": Heartbeat,
    "node_record": NodeRecord,
    "alert": Alert,
    "node_command": NodeCommand,
    "node_command_reply": NodeCommandReply,
    "job_end_query": JobEndQuery,
    "job_end_reply": JobEndReply,
    "api_error": api.ApiError,
    "api_empty_request": api.EmptyRequest,
    "api_submit_request": api.SubmitRequest,
    "api_submit_reply": api.SubmitReply,
    "api_job_ref": api.JobRef,
    "api_job_info": api.JobInfo,
    "api_job_list_request": api.JobListRequest,
    "api_job_list_reply": api.JobListReply,
    "api_job_events_reply": api.JobEventsReply,
    "api_node_list_request": api.NodeListRequest,
    "api_node_list_reply": api.NodeListReply,
    "api_node_ref": api.NodeRef,
    "api_node_windows_request": api.NodeWindowsRequest,
    "api_cancel_request": api.CancelRequest,
    "api_ack_reply": api.AckReply,
    "api_summary_reply": api.SummaryReply,
    "api_key_create_request": api.KeyCreateRequest,
    "api_key_ref": api.KeyRef,
    "api_key_rotate_request": api.KeyRotateRequest,
    "api_key_list_request": api.KeyListRequest,
    "api_key_list_reply": api.KeyListReply,
    "api_key_created": api.KeyCreated,
    "api_tenant_create_request": api.TenantCreateRequest,
    "api_tenant_created": api.TenantCreated,
    "api_tenant_list_reply": api.TenantListReply,
    "workflow": workflows.WorkflowSpec,
    "chunked": ChunkedSpec,
    "api_workflow_submit_request": workflows.WorkflowSubmitRequest,
    "api_workflow_submit_reply": workflows.WorkflowSubmitReply,
    "api_workflow_ref": workflows.WorkflowRef,
    "api_workflow_cancel_request": workflows.WorkflowCancelRequest,
    "api_workflow_info": workflows.WorkflowInfo,
    "api_workflow_list_request": workflows.WorkflowListRequest,
    "api_workflow_list_reply": workflows.WorkflowListReply,
}

JOB_DECODER: Decoder[JobSpec] = Decoder(JobSpec, "job")
EVENT_DECODER: Decoder[Event] = Decoder(Event, "event", max_bytes=MAX_EVENT_BYTES)
CAPABILITIES_DECODER: Decoder[NodeCapabilities] = Decoder(NodeCapabilities, "node capabilities")
HEARTBEAT_DECODER: Decoder[Heartbeat] = Decoder(Heartbeat, "heartbeat")
NODE_RECORD_DECODER: Decoder[NodeRecord] = Decoder(NodeRecord, "node record")
NODE_COMMAND_DECODER: Decoder[NodeCommand] = Decoder(NodeCommand, "node command")
ALERT_DECODER: Decoder[Alert] = Decoder(Alert, "alert")
