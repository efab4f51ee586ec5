//! Test bodies shared by the unit tests of the HTTP paths.

use bytes::Bytes;
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

/// A body whose frames are what `rx` sends, when it sends them; it ends when every sender is
/// dropped. A stream's answer, or a client's body that trickles in.
pub fn from_channel(
    mut rx: UnboundedReceiver<Bytes>,
) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send + Unpin {
    http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }))
}
