//! Connections to the broker and Redis, with errors that name the setting to fix.
//! (The database pool is in [`crate::db`].)

use lapin::{Connection, ConnectionProperties};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot connect to RabbitMQ at {url}: {reason}. Is RabbitMQ running and AEGIS_AMQP_URL right?")]
    Amqp { url: String, reason: String },
    #[error(
        "cannot connect to Redis at {url}: {reason}. Is Redis running and AEGIS_REDIS_URL right?"
    )]
    Redis { url: String, reason: String },
}

/// Opens an AMQP connection driven by the tokio runtime.
pub async fn connect_amqp(url: &str, name: &str) -> Result<Connection, ServiceError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .map_err(|e| ServiceError::Amqp {
            url: crate::db::redact_url(url),
            reason: e.to_string(),
        })
}

/// Opens a Redis connection manager (reconnects by itself) and checks it with PING.
pub async fn connect_redis(url: &str) -> Result<redis::aio::ConnectionManager, ServiceError> {
    let err = |e: redis::RedisError| ServiceError::Redis {
        url: crate::db::redact_url(url),
        reason: e.to_string(),
    };
    let client = redis::Client::open(url).map_err(err)?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_connection_manager(),
    )
    .await
    .map_err(|_| ServiceError::Redis {
        url: crate::db::redact_url(url),
        reason: "timed out after 5 s".into(),
    })?
    .map_err(err)?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(err)?;
    Ok(conn)
}
