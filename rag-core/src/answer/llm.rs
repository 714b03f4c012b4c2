//! Generated answers through an OpenAI-compatible `/chat/completions` endpoint.

use std::time::Duration;
use tracing::Instrument;

use serde::Deserialize;

use crate::config::OpenAiConfig;
use crate::retrieval::Hit;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("chat service: {0}")]
    Remote(String),
}

pub struct ChatClient {
    client: reqwest::Client,
    cfg: OpenAiConfig,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}
#[derive(Deserialize)]
struct Choice {
    message: Message,
}
#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

impl ChatClient {
    pub fn new(cfg: &OpenAiConfig) -> Result<Self, LlmError> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(cfg.timeout_seconds))
                .build()
                .map_err(|e| LlmError::Remote(e.to_string()))?,
            cfg: cfg.clone(),
        })
    }

    pub async fn answer(
        &self,
        question: &str,
        hits: &[Hit],
        request_id: &str,
    ) -> Result<String, LlmError> {
        let mut context = String::new();
        for (i, h) in hits.iter().enumerate() {
            context.push_str(&format!(
                "[{}] {} — {}\n{}\n\n",
                i + 1,
                h.title,
                h.section.as_deref().unwrap_or(""),
                h.text
            ));
        }
        let body = serde_json::json!({
            "model": self.cfg.chat_model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "Answer only from the numbered passages. Cite passages as [n] after each claim. If the passages do not contain the answer, say so."},
                {"role": "user", "content": format!("Passages:\n{context}\nQuestion: {question}")}
            ]
        });
        let url = format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        );
        let span = crate::obs::trace::client_span("POST", &url);
        let _ = request_id; // carried by outbound_headers() from the request's task
        let mut req = self
            .client
            .post(&url)
            .headers(span.in_scope(crate::obs::trace::outbound_headers))
            .json(&body);
        if let Some(key) = &self.cfg.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().instrument(span.clone()).await.map_err(|e| {
            crate::obs::trace::client_failed(&span, "transport");
            LlmError::Remote(e.without_url().to_string())
        })?;
        crate::obs::trace::client_status(&span, resp.status().as_u16());
        if !resp.status().is_success() {
            return Err(LlmError::Remote(format!("HTTP {}", resp.status().as_u16())));
        }
        let parsed: ChatResponse = resp
            .json()
            .await
            .map_err(|e| LlmError::Remote(format!("bad response: {}", e.without_url())))?;
        parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| LlmError::Remote("empty answer".into()))
    }
}
