//! PostgreSQL clean-up for the test binaries that have sqlx (not the Envoy
//! module's, which shares `common` but not this file).

/// SQL run against a PostgreSQL URL when this is dropped, also when the test
/// failed, on a thread and runtime of its own (the test's may be gone): for
/// databases and roles a test made. A failure is reported, never a panic.
pub struct SqlOnDrop {
    pub url: String,
    pub statements: Vec<String>,
}

impl Drop for SqlOnDrop {
    fn drop(&mut self) {
        use sqlx::Connection;
        let url = std::mem::take(&mut self.url);
        let statements = std::mem::take(&mut self.statements);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = match sqlx::PgConnection::connect(&url).await {
                    Ok(c) => c,
                    Err(e) => return eprintln!("clean-up: cannot connect: {e}"),
                };
                for stmt in statements {
                    if let Err(e) = sqlx::query(&stmt).execute(&mut conn).await {
                        eprintln!("clean-up: {stmt}: {e}");
                    }
                }
                let _ = conn.close().await;
            });
            Some(())
        })
        .join();
    }
}
