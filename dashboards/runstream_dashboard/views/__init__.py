"""Dashboard pages, one per file; app.py registers them with st.navigation. (Not named pages/:
Streamlit would treat that folder as a legacy multipage directory.)"""
