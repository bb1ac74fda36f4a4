"""The token stream's data path: engine replica -> router replica over one TLS connection.

Serve still carries the *request*: the router calls ``EngineDeployment.generate``
through its ``DeploymentHandle``, so Serve's request router picks the replica,
``max_ongoing_requests`` and queue limits apply, cancelling the call aborts the
generation, and a dead replica fails the call. Only the *chunks* travel here.

Why: a Ray streaming call costs every chunk a Ray object, a gRPC message and a trip
through both core workers and Serve's generator wrappers; on a 2-core CPU node that
CPU came straight out of the engine (docs/measurements.md). Here a chunk is one frame
written to a connection that every stream from this engine replica to that router
replica shares, so chunks written in the same engine step leave together.

Who may connect, and what a peer can do:

* the link is TLS 1.3; the engine pins the router replica's own certificate by the
  fingerprint that came with the request (:mod:`.tls`), so a capture shows no text and
  nobody can stand in for the router;
* the engine then presents the router replica's secret, which also came with the
  request; the router reads it whole and compares it in constant time (:mod:`.receiver`);
* a frame carries its stream's key, random per request and known only to the router
  and the engine the request was sent to, so a connected peer cannot write into a
  stream it was not given;
* handshakes are bounded in time, pending connections per source address, and each
  stream's queue and each frame in size.

=============  ===========================================================
``wire``       addresses, the hello, frames and their limits
``tls``        the router's certificate, the engine's pinning, keepalive
``receiver``   the router's listener: connections, hello, frames -> queues
``incoming``   one stream as the router reads it
``sender``     the engine's pooled connections
=============  ===========================================================
"""

from deployments.stream_channel.incoming import IncomingStream
from deployments.stream_channel.receiver import StreamReceiver
from deployments.stream_channel.sender import StreamSender
from deployments.stream_channel.wire import Address, ChannelClosed, FrameTooLarge, ReplyTo

__all__ = ["Address", "ChannelClosed", "FrameTooLarge", "IncomingStream", "ReplyTo", "StreamReceiver", "StreamSender"]
